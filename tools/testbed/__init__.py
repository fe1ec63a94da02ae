"""Training-only code of the testbed model (not shipped): the model and tokenizer builders, training views, quick evaluation."""
