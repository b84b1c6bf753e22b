package mpsaas_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyRules keeps the layout honest: the domain imports only the
// standard library, workflows import only the domain, adapters never import
// each other, and the emulator imports nothing of mpsaas.
func TestDependencyRules(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}:{{join .Imports " "}}`, "./...").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	const mod = "github.com/mpsaas/mpsaas"
	// allowed lists, per package, the mpsaas packages it may import.
	allowed := map[string][]string{
		mod:                   {},
		mod + "/emulator":     {},
		mod + "/subscription": {mod},
		mod + "/sqlite":       {mod},
		mod + "/dynamodb":     {mod},
		mod + "/metering":     {mod},
		mod + "/reconcile":    {mod},
		mod + "/client":       {mod},
		mod + "/sqs":          {mod},
		mod + "/sns":          {mod},
		mod + "/awslambda":    {},
		mod + "/marketplace":  {mod},
		mod + "/webhook":      {mod},
		mod + "/notify":       {mod},
		mod + "/worker":       {mod},
		mod + "/storetest":    {mod},
		mod + "/web":          {mod, mod + "/subscription"},
		mod + "/admin":        {mod},
		mod + "/metrics":      {},
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, ":")
		ok, checked := allowed[pkg]
		if !checked {
			continue // cmd/... wires everything
		}
		for _, imp := range strings.Fields(imports) {
			if pkg == mod && strings.Contains(strings.SplitN(imp, "/", 2)[0], ".") {
				t.Errorf("%s imports non-standard package %s", pkg, imp)
			}
			if !strings.HasPrefix(imp, mod) {
				continue
			}
			permitted := false
			for _, a := range ok {
				if imp == a {
					permitted = true
				}
			}
			if !permitted {
				t.Errorf("%s must not import %s", pkg, imp)
			}
		}
	}
}
