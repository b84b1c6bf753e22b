package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/mpsaas/mpsaas/admin"
)

// stdin is where admin-password reads the password (tests replace it).
var stdin io.Reader = os.Stdin

const adminPasswordUsage = `Usage: mpsaas admin-password < password.txt

Reads the seller console's password (at least 12 characters) from the first
line of standard input and prints its hash (PBKDF2-SHA256, random salt) for
MPSAAS_ADMIN_PASSWORD_HASH (the AdminPasswordHash parameter of the SAM
template). The password itself is never stored.

  printf '%s' "$PASSWORD" | mpsaas admin-password

`

func runAdminPassword(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mpsaas admin-password", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { _, _ = io.WriteString(fs.Output(), adminPasswordUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	line, err := bufio.NewReader(io.LimitReader(stdin, 4096)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read the password: %w", err)
	}
	password := strings.TrimRight(line, "\r\n")
	if password == "" {
		return usageError{errors.New("admin-password: give the password on standard input (printf '%s' \"$PASSWORD\" | mpsaas admin-password)")}
	}
	hash, err := admin.HashPassword(password, 0)
	if err != nil {
		return usageError{fmt.Errorf("admin-password: %w", err)}
	}
	fmt.Fprintln(stdout, hash)
	return nil
}
