# The project's front door: `make run` serves the registry, `make test` runs the whole suite.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(sort $(wildcard proto/registry/v1/*.proto))
INSTALLED := $(VENV)/.installed
GENERATED := registry/v1/.generated

.PHONY: run test lint fmt proto docs bench buf-lint clean mutate

$(INSTALLED): pyproject.toml scripts/bootstrap-venv.sh
	./scripts/bootstrap-venv.sh
	touch $@

$(GENERATED): $(PROTOS) $(INSTALLED)
	rm -f registry/v1/*_pb2*.py registry/v1/*_pb2*.pyi
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	touch $@

## proto: generate the Python gRPC code from proto/ into registry/v1/
proto: $(GENERATED)

## docs: regenerate docs/api.md from the proto comments
docs: $(GENERATED)
	$(BIN)/python scripts/proto_docs.py

## run: serve on REGISTRY_LISTEN (default 127.0.0.1:50051), embedded PostgreSQL unless REGISTRY_DATABASE_URL
run: $(GENERATED)
	$(BIN)/python server.py

## test: buf lint, then the whole test suite against a private PostgreSQL cluster
test: $(GENERATED) buf-lint
	@$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

buf-lint:
	./scripts/buf-lint.sh

## lint: ruff, mypy and buf
lint: $(GENERATED) buf-lint
	$(BIN)/ruff check registry tests bench clients scripts server.py
	$(BIN)/ruff format --check registry tests bench clients scripts server.py
	$(BIN)/python clients/python/generate.py
	$(BIN)/mypy registry bench clients/python/src clients/python/generate.py clients/examples

fmt: $(INSTALLED)
	$(BIN)/ruff format registry tests bench clients scripts server.py
	$(BIN)/ruff check --fix registry tests bench clients server.py

## mutate: mutation testing (mutmut) of the security-critical modules, a score per module; not part of test (docs/testing.md)
mutate: $(GENERATED)
	./scripts/mutate.sh

## bench: benchmarks that print figures (births/s, latency)
bench: $(GENERATED)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) registry/v1/*_pb2*.py registry/v1/*_pb2*.pyi $(GENERATED)
