"""Running the method over data sets: config composition (`compose`, `schema`), the Lightning module
(`lightning`) and data module (`datamodule`), the prediction writer callback (`writer`), `predict`
(one run) with its folder claim and preemption handling. The `laser` command is `laser.cli`."""
