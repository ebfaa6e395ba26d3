"""Training: ``python -m maskspec_fast.train {pretrain,finetune,eval}`` (see ``--help``)."""
