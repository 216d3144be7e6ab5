"""Benchmarks of sip-router's decision path: `uv run python -m bench` writes bench/RESULTS.md.

- run.py: the one command; phases, statistics and the report.
- loadgen.py: open-loop load generator (pre-signed webhooks, latency from the due time).
- calls.py: realistic signed `realtime.call.incoming` deliveries for the example rules.
- upstream.py: cheap loopback fake of OpenAI's call endpoints that records arrivals.
- floor_app.py: the minimal forwarding ASGI app that the service is compared with.
- rule_scale.py: generated rule files; compile time, memory, per-decision time.
- lean_transport.py: an experiment isolating the cost of httpx's default transport.
"""
