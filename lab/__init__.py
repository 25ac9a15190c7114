"""The failoverd lab: a containerlab topology that also runs on plain network namespaces."""
