package transport

import (
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// Code is a per-event result code. The numeric order is the precedence order of
// docs/protocol.md: when several codes apply to one event, the smallest wins.
// Codes travel on the wire as their snake_case names.
type Code uint8

// Result codes, in the protocol's order of precedence.
const (
	CodeOK Code = iota
	CodeExists
	// CodeUnauthorized: the caller's verified identity may not do this
	// (Owner). Checked first; for a post or void that leaves its accounts
	// empty, right after pending_transfer_not_found.
	CodeUnauthorized
	CodeIDInvalid
	CodeFlagsInvalid
	CodeLedgerInvalid
	CodeCodeInvalid
	CodeAmountInvalid
	CodeTimeoutInvalid
	CodeMetadataInvalid
	CodeTimestampMustBeZero
	CodeBalancesMustBeZero
	CodePendingIDInvalid
	CodeAccountsMustBeDifferent
	CodeExistsWithDifferentFields
	CodeDebitAccountNotFound
	CodeCreditAccountNotFound
	CodeLedgerMismatch
	CodeAccountClosed
	CodePendingTransferNotFound
	CodePendingTransferMismatch
	CodePendingTransferNotPending
	CodePendingTransferAlreadyPosted
	CodePendingTransferAlreadyVoided
	CodePendingTransferExpired
	CodeExceedsPendingTransferAmount
	CodeExceedsCredits
	CodeExceedsDebits
	CodeOverflow
	CodeLinkedEventFailed
	CodeLinkedEventChainOpen
	codeCount
)

var codeNames = [codeCount]string{
	CodeOK:                           "ok",
	CodeExists:                       "exists",
	CodeUnauthorized:                 "unauthorized",
	CodeIDInvalid:                    "id_invalid",
	CodeFlagsInvalid:                 "flags_invalid",
	CodeLedgerInvalid:                "ledger_invalid",
	CodeCodeInvalid:                  "code_invalid",
	CodeAmountInvalid:                "amount_invalid",
	CodeTimeoutInvalid:               "timeout_invalid",
	CodeMetadataInvalid:              "metadata_invalid",
	CodeTimestampMustBeZero:          "timestamp_must_be_zero",
	CodeBalancesMustBeZero:           "balances_must_be_zero",
	CodePendingIDInvalid:             "pending_id_invalid",
	CodeAccountsMustBeDifferent:      "accounts_must_be_different",
	CodeExistsWithDifferentFields:    "exists_with_different_fields",
	CodeDebitAccountNotFound:         "debit_account_not_found",
	CodeCreditAccountNotFound:        "credit_account_not_found",
	CodeLedgerMismatch:               "ledger_mismatch",
	CodeAccountClosed:                "account_closed",
	CodePendingTransferNotFound:      "pending_transfer_not_found",
	CodePendingTransferMismatch:      "pending_transfer_mismatch",
	CodePendingTransferNotPending:    "pending_transfer_not_pending",
	CodePendingTransferAlreadyPosted: "pending_transfer_already_posted",
	CodePendingTransferAlreadyVoided: "pending_transfer_already_voided",
	CodePendingTransferExpired:       "pending_transfer_expired",
	CodeExceedsPendingTransferAmount: "exceeds_pending_transfer_amount",
	CodeExceedsCredits:               "exceeds_credits",
	CodeExceedsDebits:                "exceeds_debits",
	CodeOverflow:                     "overflow",
	CodeLinkedEventFailed:            "linked_event_failed",
	CodeLinkedEventChainOpen:         "linked_event_chain_open",
}

var codesByName = func() map[string]Code {
	m := make(map[string]Code, codeCount)
	for c, n := range codeNames {
		m[n] = Code(c)
	}
	return m
}()

func (c Code) String() string {
	if c < codeCount {
		return codeNames[c]
	}
	return fmt.Sprintf("code(%d)", uint8(c))
}

// ParseCode returns the code with the given wire name.
func ParseCode(name string) (Code, bool) {
	c, ok := codesByName[name]
	return c, ok
}

// EncodeMsgpack writes the code as its wire name.
func (c Code) EncodeMsgpack(enc *msgpack.Encoder) error { return enc.EncodeString(c.String()) }

// DecodeMsgpack reads a wire name.
func (c *Code) DecodeMsgpack(dec *msgpack.Decoder) error {
	s, err := dec.DecodeString()
	if err != nil {
		return err
	}
	v, ok := ParseCode(s)
	if !ok {
		return fmt.Errorf("unknown result code %q", s)
	}
	*c = v
	return nil
}

// MarshalText makes codes readable in JSON output.
func (c Code) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// Request-level error codes: the whole request failed and nothing changed.
const (
	ErrMalformedCode     = "malformed_request"
	ErrTooManyEventsCode = "too_many_events"
	ErrUnauthorizedCode  = "unauthorized"
	ErrUnavailableCode   = "unavailable"
	ErrTimeoutCode       = "timeout"
)
