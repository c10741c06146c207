# The README's two commands: `make run` and `make test`. Each one sets itself up
# (system libraries, virtualenv, package) through scripts/setup.sh, which is
# idempotent and fast on a second run.
.PHONY: run test setup

# make run PORT=8081 MEDIA_PORT=40001 picks other ports.
PORT ?= 8080
MEDIA_PORT ?= 40000

run:
	./scripts/setup.sh run
	.venv/bin/botcall demo --port $(PORT) --media-port $(MEDIA_PORT)

test:
	./scripts/setup.sh test
	.venv/bin/lint-imports
	.venv/bin/mypy --strict botcall sdk/python/botcall_sdk
	node --test pwa/tests/
	node --test sdk/js/test/*.test.mjs
	.venv/bin/python -m pytest $(PYTEST_ARGS)
