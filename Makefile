# Build targets for `sam build` (BuildMethod: makefile). Every function is the
# same bootstrap binary; MPSAAS_FUNCTION picks its role.
GOFLAGS_LAMBDA = CGO_ENABLED=0 GOOS=linux GOARCH=arm64

build-ApiFunction build-EventsFunction build-DispatchFunction build-MeterFunction build-ReconcileFunction:
	$(GOFLAGS_LAMBDA) go build -trimpath -tags lambda.norpc -o $(ARTIFACTS_DIR)/bootstrap ./cmd/lambda

.PHONY: test ci
test:
	go test ./...
ci:
	bash .ci/run
