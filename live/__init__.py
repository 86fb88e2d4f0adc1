"""Live updates over WebSocket: ``/ws/events/`` carries the event bus to browsers and integrators,
filtered by subscription, scoped by the user's permissions and coalesced per device."""
