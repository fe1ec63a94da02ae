"""Prediction records and what is read from them, below both running (`laser.run`) and reporting
(`laser.report`, `laser.testbed`): the crash-safe prediction files and run configs (`files`), the
benchmark metrics (`metrics`) and `laser evaluate` (`evaluate`)."""
