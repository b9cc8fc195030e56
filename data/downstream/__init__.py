"""Downstream tasks: labelled examples read from real datasets in their distributed layouts (UCF101,
HMDB51, ESC-50, Speech Commands, LRW) and built from the project's own corpora (shapes, speech)."""

from data.downstream.task import Example, Task, TaskError

__all__ = ["Example", "Task", "TaskError"]
