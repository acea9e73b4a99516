// Package template renders templated secrets and configs (Templating driver
// "golang") for one task, with the context Swarm's executor gives them:
// .Service.ID/.Name/.Labels, .Task.ID/.Name/.Slot,
// .Node.ID/.Hostname/.Platform.OS/.Platform.Architecture, and the functions
// env (the task's ContainerSpec.Env), secret and config (the raw data of
// another secret or config the same task references, by its target) and
// join (first argument the separator).
//
// A template is written by whoever may create secrets, but it is executed
// inside hushd, so everything it can make hushd do is bounded: the output
// (Request.Limit), the work (a step budget charged for every node executed
// inside loops and template calls, and for the bytes functions produce),
// the size of any intermediate string built by print, printf, println,
// html, js, urlquery and join (refused before it is built), and recursion
// between {{define}}d templates (refused). Context cancellation is checked
// at every step.
//
// Secret hygiene: the output is built in a buffer whose old backing arrays
// are wiped as it grows and which is wiped on failure; the template text
// and the data the secret and config functions return are read in place
// (Go strings viewing the caller's slices, so the caller's wipe reaches
// them), and the parse tree's literal text is wiped when rendering ends.
// What this package cannot reach: text/template prints every value through
// fmt, whose pooled scratch buffers keep a copy of what they last printed
// until they are reused; quoted strings with escapes, the text of a
// template that fails to parse, and strings built by functions (join,
// printf) are copies left to the garbage collector. For a sensitive payload (a secret, or a config whose template
// read a secret before it failed), errors carry only a line and column and
// a fixed reason, never text of the template or values derived from a
// secret.
package template
