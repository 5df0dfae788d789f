"""The contract every other part of edgekit builds on: the bundle (read, write atomically, verify),
tensor specs, errors, input files and user-code imports. Imports nothing else of edgekit; torch-free."""
