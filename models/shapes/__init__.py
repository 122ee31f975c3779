"""sdcpu's own small text-to-image model: simple coloured shapes, a closed caption grammar."""
