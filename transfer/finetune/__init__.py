"""Classification fine-tuning from any tap of a SimCLR run, with 1% / 10% / all labels.

* :mod:`.protocols` the cited recipes (SimCLR App. B.5, SimCLRv2, the transfer protocol of
  SimCLR App. B.8 / Kornblith et al. 2019) as data;
* :mod:`.subsets`   class-balanced, seeded label fractions, official subset lists, the
  validation hold-out;
* :mod:`.model`     the network: encoder + the head layers up to the tap + a new classifier;
* :mod:`.loop`      the step-based training loop (bf16, channels_last, DDP + SyncBN, exact
  resume) and the once-only evaluation;
* :mod:`.command`   ``simclr-transfer finetune``: selection on validation, refit, test once,
  one record per (tap, label fraction).
"""
