"""Configuration: lab.yaml and scenario files, architectures as data, the options every subcommand takes."""
