from .interface import FusedRecurrentRNNFunction, gru, lstm, slstm
from .reference import gru_ref, lstm_ref, rnn_ref, slstm_ref

__all__ = ["FusedRecurrentRNNFunction", "gru", "gru_ref", "lstm", "lstm_ref", "rnn_ref", "slstm", "slstm_ref"]
