"""The shipped fine-detail benchmark: coloured boxes with digits (`scenes`, `glyphs`), its split
(`split`) and the table runner (`benchmark`). The tiny trained LLaVA that reads it lives in
`laser/assets/testbed/model`; the code that trains it is in `tools/testbed/` (not shipped)."""
