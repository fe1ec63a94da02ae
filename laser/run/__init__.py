"""Running the method over data sets: the `laser` command (`cli`), config composition (`compose`),
the Lightning module (`lightning`) and data module (`data`), the prediction writer (`writer`),
`predict` (one run), `evaluate` and `metrics`, and `demo`."""
