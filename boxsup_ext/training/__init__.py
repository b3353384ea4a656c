"""Pieces of the BoxSup trainer (:mod:`boxsup_ext.train`): distributed context, training data and
augmentation, each epoch's label round, what a checkpoint holds and the run-directory checks (the
files themselves: :mod:`boxsup_ext.checkpoints`), the run lock, epoch logging, signals."""
