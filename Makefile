# The README's two commands: `make run` and `make test`. Each one sets itself up
# (system libraries, virtualenv, package) through scripts/setup.sh, which is
# idempotent and fast on a second run.
.PHONY: run test setup

run:
	./scripts/setup.sh run
	.venv/bin/botcall demo

test:
	./scripts/setup.sh test
	.venv/bin/python -m pytest $(PYTEST_ARGS)
