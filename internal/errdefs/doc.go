// Package errdefs defines the few categories every hush error falls into.
//
// Packages wrap their errors with %w into one of these categories; only the
// API edge turns a category into a wire status (see internal/api). This keeps
// HTTP concerns out of the domain and gives one table to audit.
//
// An error message built here must never contain secret data or key material:
// messages reach clients and logs verbatim.
package errdefs
