"""The fine-tune workflow behind ``amc-finetune`` (:mod:`amc.finetune.workflow`): a pruned model trained back,
optionally distilling the unpruned model into it; :mod:`amc.finetune.resume` says what a resume may change."""
