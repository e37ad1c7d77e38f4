"""stunner-dp: a TURN/STUN server for WebRTC, a drop-in dataplane for STUNner."""

__version__ = "0.1.0"
