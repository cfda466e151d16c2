package transport

import (
	"fmt"
	"slices"

	"github.com/vmihailenco/msgpack/v5"
)

// fieldEncoder writes map fields and keeps the first error.
type fieldEncoder struct {
	enc *msgpack.Encoder
	err error
}

func (e *fieldEncoder) mapLen(n int) {
	if e.err == nil {
		e.err = e.enc.EncodeMapLen(n)
	}
}

func (e *fieldEncoder) str(key, v string) {
	if e.err == nil {
		e.err = e.enc.EncodeString(key)
	}
	if e.err == nil {
		e.err = e.enc.EncodeString(v)
	}
}

func (e *fieldEncoder) uint(key string, v uint64) {
	if e.err == nil {
		e.err = e.enc.EncodeString(key)
	}
	if e.err == nil {
		e.err = e.enc.EncodeUint(v)
	}
}

func (e *fieldEncoder) metadata(key string, m map[string]string) {
	if e.err == nil {
		e.err = e.enc.EncodeString(key)
	}
	if e.err == nil {
		e.err = encodeMetadata(e.enc, m)
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (a *Account) EncodeMsgpack(enc *msgpack.Encoder) error {
	e := fieldEncoder{enc: enc}
	n := 9
	if a.Metadata != nil {
		n++
	}
	e.mapLen(n)
	e.str("id", a.ID)
	e.uint("ledger", uint64(a.Ledger))
	e.uint("code", uint64(a.Code))
	e.uint("flags", uint64(a.Flags))
	if a.Metadata != nil {
		e.metadata("metadata", a.Metadata)
	}
	e.uint("debits_pending", a.DebitsPending)
	e.uint("debits_posted", a.DebitsPosted)
	e.uint("credits_pending", a.CreditsPending)
	e.uint("credits_posted", a.CreditsPosted)
	e.uint("timestamp", a.Timestamp)
	return e.err
}

// DecodeMsgpack implements msgpack.CustomDecoder with strict integer ranges.
func (a *Account) DecodeMsgpack(dec *msgpack.Decoder) error {
	n, err := decodeMapLen(dec)
	if err != nil {
		return malformed("account", err)
	}
	var buf [32]byte
	for range n {
		key, err := decodeKey(dec, &buf)
		if err != nil {
			return malformed("account key", err)
		}
		switch string(key) {
		case "id":
			a.ID, err = decodeStr(dec)
		case "ledger":
			a.Ledger, err = decodeU32(dec)
		case "code":
			a.Code, err = decodeU16(dec)
		case "flags":
			a.Flags, err = decodeU32(dec)
		case "metadata":
			a.Metadata, err = decodeMetadata(dec)
		case "debits_pending":
			a.DebitsPending, err = decodeU64(dec)
		case "debits_posted":
			a.DebitsPosted, err = decodeU64(dec)
		case "credits_pending":
			a.CreditsPending, err = decodeU64(dec)
		case "credits_posted":
			a.CreditsPosted, err = decodeU64(dec)
		case "timestamp":
			a.Timestamp, err = decodeU64(dec)
		default:
			err = skipValue(dec)
		}
		if err != nil {
			return malformed("account."+string(key), err)
		}
	}
	return nil
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (t *Transfer) EncodeMsgpack(enc *msgpack.Encoder) error {
	e := fieldEncoder{enc: enc}
	n := 8
	if t.PendingID != "" {
		n++
	}
	if t.Timeout != 0 {
		n++
	}
	if t.Metadata != nil {
		n++
	}
	if t.State != "" {
		n++
	}
	e.mapLen(n)
	e.str("id", t.ID)
	e.str("debit_account_id", t.DebitAccountID)
	e.str("credit_account_id", t.CreditAccountID)
	e.uint("amount", t.Amount)
	e.uint("ledger", uint64(t.Ledger))
	e.uint("code", uint64(t.Code))
	e.uint("flags", uint64(t.Flags))
	if t.PendingID != "" {
		e.str("pending_id", t.PendingID)
	}
	if t.Timeout != 0 {
		e.uint("timeout", uint64(t.Timeout))
	}
	if t.Metadata != nil {
		e.metadata("metadata", t.Metadata)
	}
	e.uint("timestamp", t.Timestamp)
	if t.State != "" {
		e.str("state", t.State)
	}
	return e.err
}

// DecodeMsgpack implements msgpack.CustomDecoder with strict integer ranges.
func (t *Transfer) DecodeMsgpack(dec *msgpack.Decoder) error {
	n, err := decodeMapLen(dec)
	if err != nil {
		return malformed("transfer", err)
	}
	var buf [32]byte
	for range n {
		key, err := decodeKey(dec, &buf)
		if err != nil {
			return malformed("transfer key", err)
		}
		switch string(key) {
		case "id":
			t.ID, err = decodeStr(dec)
		case "debit_account_id":
			t.DebitAccountID, err = decodeStr(dec)
		case "credit_account_id":
			t.CreditAccountID, err = decodeStr(dec)
		case "amount":
			t.Amount, err = decodeU64(dec)
		case "ledger":
			t.Ledger, err = decodeU32(dec)
		case "code":
			t.Code, err = decodeU16(dec)
		case "flags":
			t.Flags, err = decodeU32(dec)
		case "pending_id":
			t.PendingID, err = decodeStr(dec)
		case "timeout":
			t.Timeout, err = decodeU32(dec)
		case "metadata":
			t.Metadata, err = decodeMetadata(dec)
		case "timestamp":
			t.Timestamp, err = decodeU64(dec)
		case "state":
			t.State, err = decodeStr(dec)
		default:
			err = skipValue(dec)
		}
		if err != nil {
			return malformed("transfer."+string(key), err)
		}
	}
	return nil
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (r *Result) EncodeMsgpack(enc *msgpack.Encoder) error {
	e := fieldEncoder{enc: enc}
	e.mapLen(3)
	e.uint("index", uint64(r.Index))
	e.str("code", r.Code.String())
	e.uint("timestamp", r.Timestamp)
	return e.err
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (r *Result) DecodeMsgpack(dec *msgpack.Decoder) error {
	n, err := decodeMapLen(dec)
	if err != nil {
		return malformed("result", err)
	}
	var buf [32]byte
	for range n {
		key, err := decodeKey(dec, &buf)
		if err != nil {
			return malformed("result key", err)
		}
		switch string(key) {
		case "index":
			r.Index, err = decodeU32(dec)
		case "code":
			err = r.Code.DecodeMsgpack(dec)
		case "timestamp":
			r.Timestamp, err = decodeU64(dec)
		default:
			err = skipValue(dec)
		}
		if err != nil {
			return malformed("result."+string(key), err)
		}
	}
	return nil
}

// decodeList decodes a map that holds one known array field (and possibly
// an error), calling item for each element of the array.
func decodeList(dec *msgpack.Decoder, field string, alloc func(n int), item func(i int) error, errp **Error) error {
	n, err := decodeMapLen(dec)
	if err != nil {
		return malformed("request", err)
	}
	var buf [32]byte
	for range n {
		key, err := decodeKey(dec, &buf)
		if err != nil {
			return malformed("request key", err)
		}
		switch {
		case string(key) == field:
			m, err := decodeArrayLen(dec)
			if err != nil {
				return malformed(field, err)
			}
			alloc(m)
			for i := range m {
				if err := item(i); err != nil {
					return malformed(field, err)
				}
			}
		case string(key) == "error" && errp != nil:
			var e Error
			if err := dec.Decode(&e); err != nil {
				return malformed("error", err)
			}
			*errp = &e
		default:
			if err := skipValue(dec); err != nil {
				return malformed(string(key), err)
			}
		}
	}
	return nil
}

// encodeList writes {field: [n items]} or {error: ...}.
func encodeList(enc *msgpack.Encoder, field string, n int, item func(i int) error, e *Error) error {
	if e != nil {
		if err := enc.EncodeMapLen(1); err != nil {
			return err
		}
		if err := enc.EncodeString("error"); err != nil {
			return err
		}
		return enc.Encode(e)
	}
	if err := enc.EncodeMapLen(1); err != nil {
		return err
	}
	if err := enc.EncodeString(field); err != nil {
		return err
	}
	if err := enc.EncodeArrayLen(n); err != nil {
		return err
	}
	for i := range n {
		if err := item(i); err != nil {
			return err
		}
	}
	return nil
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (r *CreateAccountsRequest) EncodeMsgpack(enc *msgpack.Encoder) error {
	return encodeList(enc, "accounts", len(r.Accounts), func(i int) error { return r.Accounts[i].EncodeMsgpack(enc) }, nil)
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (r *CreateAccountsRequest) DecodeMsgpack(dec *msgpack.Decoder) error {
	return decodeList(dec, "accounts", func(n int) { r.Accounts = make([]Account, n) },
		func(i int) error { return r.Accounts[i].DecodeMsgpack(dec) }, nil)
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (r *CreateTransfersRequest) EncodeMsgpack(enc *msgpack.Encoder) error {
	return encodeList(enc, "transfers", len(r.Transfers), func(i int) error { return r.Transfers[i].EncodeMsgpack(enc) }, nil)
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (r *CreateTransfersRequest) DecodeMsgpack(dec *msgpack.Decoder) error {
	return decodeList(dec, "transfers", func(n int) { r.Transfers = make([]Transfer, n) },
		func(i int) error { return r.Transfers[i].DecodeMsgpack(dec) }, nil)
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (r *LookupRequest) EncodeMsgpack(enc *msgpack.Encoder) error {
	return encodeList(enc, "ids", len(r.IDs), func(i int) error { return enc.EncodeString(r.IDs[i]) }, nil)
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (r *LookupRequest) DecodeMsgpack(dec *msgpack.Decoder) error {
	return decodeList(dec, "ids", func(n int) { r.IDs = make([]string, n) },
		func(i int) (err error) { r.IDs[i], err = decodeStr(dec); return err }, nil)
}

// Check validates a lookup: nothing to check beyond its decoding (the
// decoder bounds the ids).
func (r *LookupRequest) Check() error { return nil }

// EncodeMsgpack implements msgpack.CustomEncoder.
func (r *ResultsReply) EncodeMsgpack(enc *msgpack.Encoder) error {
	return encodeList(enc, "results", len(r.Results), func(i int) error { return r.Results[i].EncodeMsgpack(enc) }, r.Error)
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (r *ResultsReply) DecodeMsgpack(dec *msgpack.Decoder) error {
	return decodeList(dec, "results", func(n int) { r.Results = make([]Result, n) },
		func(i int) error { return r.Results[i].DecodeMsgpack(dec) }, &r.Error)
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (r *AccountsReply) EncodeMsgpack(enc *msgpack.Encoder) error {
	return encodeList(enc, "accounts", len(r.Accounts), func(i int) error { return r.Accounts[i].EncodeMsgpack(enc) }, r.Error)
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (r *AccountsReply) DecodeMsgpack(dec *msgpack.Decoder) error {
	return decodeList(dec, "accounts", func(n int) { r.Accounts = make([]Account, n) },
		func(i int) error { return r.Accounts[i].DecodeMsgpack(dec) }, &r.Error)
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (r *TransfersReply) EncodeMsgpack(enc *msgpack.Encoder) error {
	return encodeList(enc, "transfers", len(r.Transfers), func(i int) error { return r.Transfers[i].EncodeMsgpack(enc) }, r.Error)
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (r *TransfersReply) DecodeMsgpack(dec *msgpack.Decoder) error {
	return decodeList(dec, "transfers", func(n int) { r.Transfers = make([]Transfer, n) },
		func(i int) error { return r.Transfers[i].DecodeMsgpack(dec) }, &r.Error)
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (f *AccountFilter) EncodeMsgpack(enc *msgpack.Encoder) error {
	e := fieldEncoder{enc: enc}
	e.mapLen(5)
	e.str("account_id", f.AccountID)
	e.uint("timestamp_min", f.TimestampMin)
	e.uint("timestamp_max", f.TimestampMax)
	e.uint("limit", uint64(f.Limit))
	if e.err == nil {
		e.err = enc.EncodeString("reverse")
	}
	if e.err == nil {
		e.err = enc.EncodeBool(f.Reverse)
	}
	return e.err
}

// DecodeMsgpack implements msgpack.CustomDecoder with strict types.
func (f *AccountFilter) DecodeMsgpack(dec *msgpack.Decoder) error {
	n, err := decodeMapLen(dec)
	if err != nil {
		return malformed("filter", err)
	}
	var buf [32]byte
	for range n {
		key, err := decodeKey(dec, &buf)
		if err != nil {
			return malformed("filter key", err)
		}
		switch string(key) {
		case "account_id":
			f.AccountID, err = decodeStr(dec)
		case "timestamp_min":
			f.TimestampMin, err = decodeU64(dec)
		case "timestamp_max":
			f.TimestampMax, err = decodeU64(dec)
		case "limit":
			f.Limit, err = decodeU32(dec)
		case "reverse":
			f.Reverse, err = decodeBool(dec)
		default:
			err = skipValue(dec)
		}
		if err != nil {
			return malformed("filter."+string(key), err)
		}
	}
	return nil
}

// Check validates a filter; the error says what is wrong.
func (f *AccountFilter) Check() error {
	switch {
	case !ValidID(f.AccountID):
		return fmt.Errorf("account_id must be 1 to %d bytes of [A-Za-z0-9_.:@-]", IDBytesMax)
	case f.Limit == 0 || f.Limit > HistoryLimitMax:
		return fmt.Errorf("limit must be 1 to %d", HistoryLimitMax)
	case f.TimestampMax != 0 && f.TimestampMin > f.TimestampMax:
		return fmt.Errorf("timestamp_min %d is after timestamp_max %d", f.TimestampMin, f.TimestampMax)
	}
	return nil
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (b *Balance) EncodeMsgpack(enc *msgpack.Encoder) error {
	e := fieldEncoder{enc: enc}
	e.mapLen(5)
	e.uint("timestamp", b.Timestamp)
	e.uint("debits_pending", b.DebitsPending)
	e.uint("debits_posted", b.DebitsPosted)
	e.uint("credits_pending", b.CreditsPending)
	e.uint("credits_posted", b.CreditsPosted)
	return e.err
}

// DecodeMsgpack implements msgpack.CustomDecoder with strict integer ranges.
func (b *Balance) DecodeMsgpack(dec *msgpack.Decoder) error {
	n, err := decodeMapLen(dec)
	if err != nil {
		return malformed("balance", err)
	}
	var buf [32]byte
	for range n {
		key, err := decodeKey(dec, &buf)
		if err != nil {
			return malformed("balance key", err)
		}
		switch string(key) {
		case "timestamp":
			b.Timestamp, err = decodeU64(dec)
		case "debits_pending":
			b.DebitsPending, err = decodeU64(dec)
		case "debits_posted":
			b.DebitsPosted, err = decodeU64(dec)
		case "credits_pending":
			b.CreditsPending, err = decodeU64(dec)
		case "credits_posted":
			b.CreditsPosted, err = decodeU64(dec)
		default:
			err = skipValue(dec)
		}
		if err != nil {
			return malformed("balance."+string(key), err)
		}
	}
	return nil
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (r *BalancesReply) EncodeMsgpack(enc *msgpack.Encoder) error {
	return encodeList(enc, "balances", len(r.Balances), func(i int) error { return r.Balances[i].EncodeMsgpack(enc) }, r.Error)
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (r *BalancesReply) DecodeMsgpack(dec *msgpack.Decoder) error {
	return decodeList(dec, "balances", func(n int) { r.Balances = make([]Balance, n) },
		func(i int) error { return r.Balances[i].DecodeMsgpack(dec) }, &r.Error)
}

// StatusRequest is the body of cluster.status: a map with no field of its
// own (unknown fields are skipped, as in every body).
type StatusRequest struct{}

// EncodeMsgpack implements msgpack.CustomEncoder: {}.
func (r *StatusRequest) EncodeMsgpack(enc *msgpack.Encoder) error { return enc.EncodeMapLen(0) }

// DecodeMsgpack implements msgpack.CustomDecoder.
func (r *StatusRequest) DecodeMsgpack(dec *msgpack.Decoder) error {
	n, err := decodeMapLen(dec)
	if err != nil {
		return malformed("request", err)
	}
	var buf [32]byte
	for range n {
		key, err := decodeKey(dec, &buf)
		if err != nil {
			return malformed("request key", err)
		}
		if err := skipValue(dec); err != nil {
			return malformed(string(key), err)
		}
	}
	return nil
}

// statusReplyFields is StatusReply without its methods: encoded by its
// struct tags.
type statusReplyFields StatusReply

// EncodeMsgpack implements msgpack.CustomEncoder: a reply that failed as a
// whole is {error} alone, as every other reply's (docs/protocol.md).
func (r *StatusReply) EncodeMsgpack(enc *msgpack.Encoder) error {
	if r.Error != nil {
		return encodeList(enc, "", 0, nil, r.Error)
	}
	return enc.Encode((*statusReplyFields)(r))
}
