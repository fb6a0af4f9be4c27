"""Images as people upload them, turned into what a moderation backend takes.

``formats`` names a payload by its magic bytes; ``header`` reads sizes and frame counts before a
pixel is decoded; ``normalize`` decodes within the safety bounds, picks animation frames and
produces either encoded JPEG/PNG within a backend's limits or reduced RGB pixels. All of it is
synchronous and CPU-bound: the normalize stage runs it in a bounded worker pool.
"""
