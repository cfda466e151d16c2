package shard

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// PeekKind reads a command's Kind without decoding the rest, so a leader
// can route a command it proposes as is (the FSM decodes it once).
func PeekKind(data []byte) (Kind, error) {
	dec := msgpack.NewDecoder(bytes.NewReader(data))
	n, err := dec.DecodeMapLen()
	if err != nil {
		return 0, err
	}
	for range n {
		key, err := dec.DecodeString()
		if err != nil {
			return 0, err
		}
		if key == "k" {
			k, err := dec.DecodeUint8()
			if err != nil {
				return 0, fmt.Errorf("command kind: %w", err)
			}
			return Kind(k), nil
		}
		if err := dec.Skip(); err != nil {
			return 0, err
		}
	}
	return 0, errors.New("command without a kind")
}
