# The two commands: `make bench` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# Override for a CUDA machine: make bench TORCH=torch
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.samplerbench-installed

.PHONY: venv bench test perf full headline readme-headline grids clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	# pin whatever torch was installed so the project install cannot replace it
	$(BIN)/python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e '.[test]'
	$(BIN)/pip install -q --no-deps k-diffusion
	touch $(STAMP)

TRAINED := moons-vp,moons-rf,checkerboard-vp,checkerboard-rf,digits-vp,digits-rf,digits-latent-vp,digits-latent-rf

bench: $(STAMP)
	$(BIN)/samplerbench run bench/matrices/quick.toml --out results/quick
	$(BIN)/samplerbench report results/quick
	$(BIN)/samplerbench run bench/matrices/zoo.toml --out results/zoo
	$(BIN)/samplerbench preview $(TRAINED),digits-cond-rf --out results/zoo/report
	$(BIN)/samplerbench preview digits-cond-rf --guidance 2 --out results/zoo/report
	$(BIN)/samplerbench report results/zoo

# one pytest-xdist worker per core (each test runs single-threaded); a file's tests share a
# worker so that module fixtures (trained features, references) are built once
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n auto --dist loadfile tests

# glibc allocator thresholds raised so that freed 256 KB tensors are not handed back to the OS
# and paged in again: page faults otherwise add run-order-dependent noise to every timing
PERF_MALLOC := MALLOC_TRIM_THRESHOLD_=268435456 MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TOP_PAD_=67108864

perf: $(STAMP)
	HF_HUB_OFFLINE=1 $(PERF_MALLOC) $(BIN)/python -m pytest -q -p no:cacheprovider benchmarks --benchmark-only -o python_files="bench_*.py" --benchmark-columns=median,iqr,rounds

# The larger published matrix (about 1.5 h on 2 cores; resumable) and its report.
full: $(STAMP)
	$(BIN)/torchrun --standalone --nproc_per_node=2 -m samplerbench run bench/matrices/full.toml --out results/full
	$(BIN)/samplerbench report results/full --format md,csv,html,latex,parquet

# The published headline (about 75 min on 2 cores with two processes; resumable): the digits
# networks at equal NFE budgets, 2048 samples per cell, FID +- se and rank groups; its summary
# table is spliced into the README between the headline markers.
headline: $(STAMP)
	$(BIN)/torchrun --standalone --nproc_per_node=2 -m samplerbench run bench/matrices/headline.toml --out results/headline
	$(BIN)/samplerbench report results/headline --format md,csv,html,latex,parquet
	$(MAKE) readme-headline

readme-headline:
	$(BIN)/python -c "import re, pathlib; r = pathlib.Path('README.md'); \
	t = pathlib.Path('results/headline/report/summary.md').read_text().strip(); \
	r.write_text(re.sub(r'(<!-- headline:start -->\n).*?(<!-- headline:end -->)', \
	lambda m: m.group(1) + t + '\n' + m.group(2), r.read_text(), flags=re.S))"

# What the grid is worth (results/grids/README.md; ~40 min of one core for the analytic table,
# ~65 min for the digits part): tuned grids vs karras/ays/kl_optimal/beta/logsnr, held-out seeds
GRID_DIGITS := digits-vp_dpmpp_2m_nfe6 digits-vp_dpmpp_2m_nfe10 digits-rf_dpmpp_2m_nfe6 digits-rf_dpmpp_2m_nfe10 \
	digits-vp_unipc_bh2_nfe6 digits-vp_unipc_bh2_nfe10 digits-rf_unipc_bh2_nfe6 digits-rf_unipc_bh2_nfe10

grids: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m samplerbench.bench.tune_table --out results/grids/analytic.md \
		--rows results/grids/analytic.jsonl --grid-dir results/grids/tuned
	for c in $(GRID_DIGITS); do \
		set -- $$(echo $$c | tr _ ' '); \
		mf=600; [ "$$2" = unipc ] && mf=300; \
		OMP_NUM_THREADS=1 $(BIN)/samplerbench tune-grid $$1 $$2_$$3 --nfe $${4#nfe} --objective refine \
			--seeds-cal 64 --seeds-eval 64 --maxfev $$mf --out results/grids/digits/tuned/$$c.json --quiet || exit 1; \
		$(BIN)/samplerbench run results/grids/digits/specs/$$c.toml --out results/grids/digits/$$c --quiet || exit 1; \
		$(BIN)/samplerbench report results/grids/digits/$$c --format md,csv || exit 1; \
	done
	$(BIN)/python -m samplerbench.bench.grid_table $(addprefix results/grids/digits/,$(GRID_DIGITS)) \
		--name list=tuned --out results/grids/digits/table.md
	OMP_NUM_THREADS=1 $(BIN)/python -m samplerbench.bench.tune_check results/grids/digits/tuned/*.json \
		--out results/grids/digits/finecheck.json

clean:
	rm -rf $(VENV) build *.egg-info
