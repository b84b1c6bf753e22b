package main

import (
	"fmt"
	"os"
	"testing"
)

// TestMain lets the test binary be the DynamoDB bench's emulator process,
// as the mpsaas binary is (main).
func TestMain(m *testing.M) {
	if dims, ok := os.LookupEnv(benchEmulatorEnv); ok {
		if err := runBenchEmulator(dims, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
