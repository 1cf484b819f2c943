"""The managed (lifecycle) relocalization node (console script ``relocalize_lifecycle_node``).

Nav2 brings its servers up through ``nav2_lifecycle_manager``, which drives each node's
``<node>/change_state``. This variant of :class:`~posenet_ros.ros.relocalize_node.RelocalizerNode`
starts unconfigured and does nothing until asked:

* ``configure``: declares and validates the parameters, loads the model and the scene map
  (the slow part; a wrong parameter or a missing map fails the transition with the reason in
  the log, and the node stays unconfigured);
* ``activate``: TF listener, publishers, services, the worker threads, then the camera
  subscriptions: it relocalizes from here on;
* ``deactivate``: stops the threads and destroys everything ``activate`` created;
* ``cleanup``: drops the model and the map; ``shutdown``: deactivates first when active.

The plain node (``relocalize_node``) stays the default; both share every parameter.
"""

from __future__ import annotations

import contextlib
import sys

from rclpy.exceptions import InvalidHandle
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from posenet_ros.core.errors import PoseNetError
from posenet_ros.ros import relocalize_node

__all__ = ['ManagedRelocalizerNode', 'main']

_KINDS = ('subscription', 'publisher', 'service', 'timer', 'guard_condition')


class ManagedRelocalizerNode(relocalize_node.RelocalizerNode, LifecycleNode):
    """The relocalization node as a lifecycle node (see the module docstring)."""

    _managed = True

    def __init__(self, **node_kwargs):
        super().__init__(**node_kwargs)
        self._created = None  # what activate created, per kind (None: not active)
        self._log.info('unconfigured: waiting for the configure transition')

    def _entities(self) -> dict:
        return {'subscription': set(self.subscriptions), 'publisher': set(self.publishers),
                'service': set(self.services), 'timer': set(self.timers),
                'guard_condition': set(self.guards)}

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Parameters, model and map."""
        try:
            self._configure()
        except PoseNetError as exc:
            self._log.error(f'cannot configure: {exc}')
            return TransitionCallbackReturn.FAILURE
        self._log.info(f'configured: model {self._model_id}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Outputs, services, threads and the input subscriptions."""
        before = self._entities()
        try:
            self._activate()
        except PoseNetError as exc:  # e.g. recovery without verification
            self._log.error(f'cannot activate: {exc}')
            self._created = {k: self._entities()[k] - v for k, v in before.items()}
            self._deactivate()
            return TransitionCallbackReturn.FAILURE
        self._created = {k: self._entities()[k] - v for k, v in before.items()}
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop relocalizing: no threads, no subscriptions, no publishers."""
        self._deactivate()
        self._log.info('deactivated')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Drop the model and the map (configure loads them again)."""
        self._localizer = None
        self._log.info('cleaned up')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Deactivate first when active."""
        self._deactivate()
        return TransitionCallbackReturn.SUCCESS

    def _deactivate(self) -> None:
        """Stop the threads and destroy what activate created (idempotent)."""
        if self._created is None:
            return
        if hasattr(self, '_worker'):
            self._frames.stop()
            self._worker.join(timeout=2.0)
            if getattr(self, '_verifier', None) is not None:
                self._verifier.stop()
        for kind in _KINDS:
            for entity in self._created.get(kind, ()):
                with contextlib.suppress(InvalidHandle):
                    getattr(self, f'destroy_{kind}')(entity)
        self._created = None


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: the managed node, waiting for lifecycle transitions."""
    return relocalize_node.main(argv, ManagedRelocalizerNode)


if __name__ == '__main__':
    sys.exit(main())
