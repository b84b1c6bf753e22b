package main

import (
	"crypto/rand"
	"encoding/hex"

	"github.com/mpsaas/mpsaas/internal/config"
)

// Config is the configuration of the mpsaas commands: the settings both
// runtimes share (internal/config) and serve's own.
type Config = config.Config

func randomSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
