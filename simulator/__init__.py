"""A stand-in for the MiniVoice platform: answer_url calls, wss media streams and webhooks."""
