#!/bin/sh
# tests/openapi/run.sh - api/openapi.yaml checked by the ecosystem's own tools (pinned in
# package-lock.json, installed with npm ci):
#   1. `redocly lint` with the recommended rules, warnings made errors (redocly.yaml);
#   2. schemas.mjs: every schema that Prism checks with compiles (Prism skips one that does
#      not, without a word, and its checks of that request or answer could never fail);
#   3. the integration tests named below, with every request they make through Prism's
#      validation proxy (LUNA_OPENAPI_PROXY, tests/lunaserve_proc.py): a request or an answer
#      that the spec does not describe fails the test that made it.
# Uses $LUNA_BIN_DIR/lunaserve (default build/bin). Prints "N passed, N failed" (test_server.py).
#
# Which tests, and which requests, go through the proxy: every test whose requests are API
# calls. Left out are the tests of connections and load (raw sockets, per-IP limits,
# disconnects, keep-alive pings, drain, the ledger under 32 clients): their requests are the
# same calls, and what they test is the server's own socket, which a proxy in between would hide. Within the tests run here, requests outside the spec on
# purpose are marked off_spec (their answers are still checked), and the few that Prism cannot
# forward as they are go to the server directly (direct=True): bodies that are not JSON or not
# UTF-8 (Prism forwards a body re-encoded: JSON re-serialised, invalid UTF-8 as U+FFFD). Prism
# buffers a stream before it forwards it (the timing of streams is the integration suite's to
# test), and OpenAPI 3.0 can describe an event stream only as text: the events themselves are
# checked by the tests.
set -eu
cd "$(dirname "$0")"
[ -x node_modules/.bin/prism ] && [ -x node_modules/.bin/redocly ] || npm ci --no-audit --no-fund --loglevel=error
# Redocly would print an update notice and send telemetry (redocly.yaml turns that off too)
export REDOCLY_SUPPRESS_UPDATE_NOTICE=true REDOCLY_TELEMETRY=off
node_modules/.bin/redocly lint --config redocly.yaml ../../api/openapi.yaml
node schemas.mjs ../../api/openapi.yaml
LUNA_OPENAPI_PROXY="$PWD/node_modules/.bin/prism" /usr/bin/python3 ../integration/test_state_cache.py \
  test_portable_states test_chat_turns_prefill_only_their_new_messages
LUNA_OPENAPI_PROXY="$PWD/node_modules/.bin/prism" exec /usr/bin/python3 ../integration/test_server.py \
  test_health_ready_info_metrics test_blas_kernel_reported test_classify_matches_cli \
  test_classify_list_and_base64 test_validation_errors test_request_id test_input_too_long_and_truncate \
  test_openapi_describes_every_route test_generate_matches_cli test_generate_stream test_generate_validation \
  test_generate_seed_under_load test_batch_bytes_match_alone test_openai_completions test_openai_chat test_vllm_classify \
  test_playground_assets test_generate_limits test_hashed_ngram_model \
  test_auth_and_cors test_memory_never_fits test_classify_raw_body test_queue_full_429 test_deadline_504 \
  test_stream_errors_logged_and_counted test_metrics_auth_and_cors_null \
  test_logprobs_match_reference test_logprobs_validation test_score test_logprobs_with_state_cache
