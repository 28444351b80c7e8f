"""``model-router label``: outcome records (EVAL.md) from your own prompts, graded by a judge model.

Modules: ``grading`` (rubric, judge prompt, grade parsing), ``retry`` (backoff policy), ``client`` (one
OpenAI-compatible endpoint), ``records`` (prompt input, resumable output), ``cost`` (estimate, actual cost, budget),
``progress``, ``run`` (labelling one item and many), ``command`` (the CLI flow) and ``options`` (its arguments).
Importing this package loads nothing heavy: ``command`` (httpx) is imported only when the command runs.
"""

__all__: list[str] = []
