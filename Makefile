# Shortcuts for `python3 ops/dev.py ...`, which needs nothing but Python 3.11+ (make may be
# missing on a fresh machine; the README gives the python3 commands). Extra arguments go
# in ARGS, e.g. `make test ARGS="-k devstack -x"`.
PYTHON ?= python3
DEV := $(PYTHON) ops/dev.py

.PHONY: run test lint bench loadtest chaos

run:
	$(DEV) run $(ARGS)

test:
	$(DEV) test $(ARGS)

lint:
	$(DEV) lint $(ARGS)

bench:
	$(DEV) bench $(ARGS)

loadtest:
	$(DEV) loadtest $(if $(SHAPE),--shape $(SHAPE)) $(ARGS)

chaos:
	$(DEV) chaos $(ARGS)
