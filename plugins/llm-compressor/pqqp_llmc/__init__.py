"""pqqp-bench methods that run llm-compressor's modifiers through `oneshot`.

`llmc-sparsegpt`, `llmc-wanda` (pruners), `llmc-gptq` and `llmc-rtn` (weight quantizers) are registered with
the harness through the entry-point group `pqqp_bench.methods` (see pyproject.toml). Each is a model-scope
stage: it hands the whole model and the harness's calibration token ids to `llmcompressor.oneshot`, then
leaves plain `nn.Linear` modules holding the weights llm-compressor computed, and returns the masks or weight
grids the harness keeps in force for later stages. README.md says what is measured and what is not.
"""

__version__ = "0.1.0"
