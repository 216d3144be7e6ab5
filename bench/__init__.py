"""Benchmarks of sip-router's decision path: `uv run python -m bench` writes bench/RESULTS.md.

- run.py: the one command; phases, statistics and the report.
- loadgen.py: open-loop load generator (pre-signed webhooks, latency from the due time).
- calls.py: realistic signed `realtime.call.incoming` deliveries for the example rules.
- upstream.py: cheap loopback fake of OpenAI's call endpoints that records arrivals.
- floor_app.py: the minimal forwarding ASGI app that the service is compared with.
- rule_scale.py: generated rule files; compile time, memory, per-decision time.
- lean_transport.py: an experiment isolating the cost of httpx's default transport.
- openai_example_app.py: the peer, the receiver OpenAI's FastAPI SIP example would give.
- closed_loop.py (+ closed_loop.lua): wrk at 1 and 16 connections against the floor, the
  peer and sip-router (`uv run python -m bench.closed_loop`; needs Debian's `wrk`).
- active_calls.py: one replica holding many calls with open sidebands (`-m bench.active_calls`).
- hostile_clients.py: legitimate webhooks while an attacker holds connections.
"""
