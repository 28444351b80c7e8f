"""Benchmarks of the router in Envoy's path: Envoy alone, a do-nothing ext_proc floor, and the router.

``python -m bench.run`` (``make bench``) runs every setup interleaved round by round and writes
``bench/results/<timestamp>.jsonl``; see ``bench/RESULTS.md`` for a recorded run and how to read it.
"""
