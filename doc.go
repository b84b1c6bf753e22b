// Package mpsaas holds the domain of an AWS Marketplace SaaS integration:
// buyers and their identities, subscription events and the state they fold
// into, entitlements, access decisions, and the ports (interfaces) the
// workflow packages use to reach storage and AWS.
//
// It imports only the standard library and does no I/O. Adapters live in
// sub-packages named after what they wrap (sqlite, marketplace, web, ...);
// cmd/mpsaas wires them together.
package mpsaas
