"""Pieces of the BoxSup trainer (:mod:`boxsup_ext.train`): distributed context, training data and
augmentation, each epoch's label round, checkpoints and run-directory checks, epoch logging,
signals."""
