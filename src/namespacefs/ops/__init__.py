"""Operations that change the system: enter, kill, pin, shift, checkpoint."""
