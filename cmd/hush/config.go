package main

// configCommand is `hush config …`: the version commands of secrets, for
// configs (the same endpoints under /hush/v1/configs).
func configCommand() *command {
	return objectCommand(objectKind{noun: "config", plural: "configs", max: 1000 * 1024})
}
