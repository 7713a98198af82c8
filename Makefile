# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create (or reuse) the virtualenv in $(VENV) and install srtool into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.srtool-installed

.PHONY: demo test test-fast venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Main job: upscale scikit-image's bundled sample photos with the default model into demo/output.
demo: $(STAMP)
	$(BIN)/python -m srtool.samples demo/input
	$(BIN)/srtool upscale demo/input -o demo/output

# The whole suite, slow tests included (this is what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# Skip the tests marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) demo build *.egg-info
