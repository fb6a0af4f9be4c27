"""The stages of one message, in order: parse, load, normalize, match, analyze, decide, publish.

Each stage is a small object with typed input and output; :mod:`service.pipeline` runs them in
order and owns what happens when one fails (the DLQ), so a new stage slots in between two others
without growing one class.
"""
