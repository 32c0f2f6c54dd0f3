# medgen: one command for the demo, one for the tests. Each creates .venv when absent.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_out

.PHONY: demo test test-slow test-wheel venv clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

venv: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/medgen demo $(DEMO_DIR)

# pytest exits 5 when it selects no test: for these targets that is an error (a check that silently did not run).
PYTEST = status=0; $(BIN)/python -m pytest -q $(1) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make: pytest selected no tests ($(1)): nothing was checked" >&2; exit 1; fi; \
	exit $$status

test: $(BIN)/.installed
	@$(call PYTEST,)

test-slow: $(BIN)/.installed  # the quality floors: the demo trained and held to its figures (about 15 min on 2 cores)
	@$(call PYTEST,-m slow)

test-wheel:  # the wheel installed (not editable) in a fresh venv and run from another folder: presets, shipped models
	bash .ci/wheel_smoke "$(TORCH)"

clean:
	rm -rf $(DEMO_DIR) build *.egg-info
