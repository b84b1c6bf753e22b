// Package testenv finds the servers that integration tests run against.
package testenv

import (
	"os"
	"testing"
)

// DynamoDB returns MPSAAS_DYNAMODB_ENDPOINT (a DynamoDB-compatible server
// such as dynalite). Without it the test is skipped, or fails when
// MPSAAS_REQUIRE_DYNAMODB=1 (CI).
func DynamoDB(t testing.TB) string {
	t.Helper()
	return endpoint(t, "MPSAAS_DYNAMODB_ENDPOINT", "MPSAAS_REQUIRE_DYNAMODB", "a DynamoDB-compatible server (e.g. dynalite)")
}

// SQS returns MPSAAS_SQS_ENDPOINT (an SQS/SNS-compatible server such as
// goaws). Without it the test is skipped, or fails when MPSAAS_REQUIRE_SQS=1.
func SQS(t testing.TB) string {
	t.Helper()
	return endpoint(t, "MPSAAS_SQS_ENDPOINT", "MPSAAS_REQUIRE_SQS", "an SQS/SNS-compatible server (e.g. goaws)")
}

func endpoint(t testing.TB, env, require, what string) string {
	t.Helper()
	v := os.Getenv(env)
	if v == "" {
		if os.Getenv(require) == "1" {
			t.Fatalf("%s=1 but %s is not set", require, env)
		}
		t.Skipf("set %s to %s to run", env, what)
	}
	return v
}
