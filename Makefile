# sparsemac: `make demo` and `make test` install everything they need themselves.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
SIM     ?= icarus
WAVES   ?= 0
BOARD   ?= arty_a7
PES     ?=
PES_ARG := $(if $(PES),--pes $(PES),)
EXAMPLE := examples/digits_mlp.pt
BUILD   := build/digits_mlp-$(BOARD)
APT     := iverilog g++ make ccache perl
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test sim bench fuzz clean

# System tools (Icarus, a C++ compiler for Verilator) from apt, Python packages in a venv.
$(VENV)/.installed: pyproject.toml
	@missing=""; for tool in iverilog vvp g++ ccache perl; do \
	  command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing from apt: $(APT) (missing:$$missing)"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $(APT); \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

install: $(VENV)/.installed

# The main job on the bundled example: build for the Arty A7 (P: the fit check's choice unless
# PES=N), simulate the digits test split on Icarus bit-exactly against the reference model with
# the RTL's accuracy beside float PyTorch's, print the report.
demo: install
	$(PY) -m compiler build $(EXAMPLE) --board $(BOARD) $(PES_ARG)
	$(PY) -m compiler simulate $(BUILD) --simulator $(SIM) --inputs examples/digits_test_x.npy \
	  --labels examples/digits_test_y.npy
	@cat $(BUILD)/report.md

test: install
	$(PY) -m pytest -n 2 -q --durations=15

# `make sim SIM=verilator WAVES=1`: the example through cocotb, with an FST trace on request.
sim: install
	$(PY) -m compiler build $(EXAMPLE) --board $(BOARD) $(PES_ARG)
	$(PY) -m compiler simulate $(BUILD) --simulator $(SIM) --inputs examples/digits_test_x.npy \
	  $(if $(filter 1,$(WAVES)),--waves --limit 4,)

# The fuzz campaign (docs/verification.md): seeded random models and inputs, RTL against the
# reference bit for bit on $(SIM); summary.json and failing cases' reproducers in build/fuzz.
FUZZ_CASES ?= 2000
FUZZ_SEED  ?= 1
FUZZ_JOBS  ?= 2
fuzz: install
	$(PY) -m compiler fuzz --cases $(FUZZ_CASES) --seed $(FUZZ_SEED) --jobs $(FUZZ_JOBS) \
	  --simulator $(SIM) --out build/fuzz

bench: install
	$(PY) benchmarks/cycles.py

clean:
	rm -rf build sim_build .pytest_cache
