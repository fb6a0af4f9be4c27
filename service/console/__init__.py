"""The self-hosted review console: people decide the images the pipeline sent to review.

It reads review records from the review topic into a shared store, hands each item to one
reviewer at a time (an expiring claim), and turns a reviewer's choice into exactly what Amazon A2I
would have produced: an ``output.json`` in A2I's layout and a "SageMaker A2I HumanLoop Status
Change" event on the completions topic. The completion sink cannot tell the two paths apart.
"""
