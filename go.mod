module github.com/ledgerd/ledgerd

go 1.26.0

require (
	github.com/cespare/xxhash/v2 v2.3.0
	github.com/vmihailenco/msgpack/v5 v5.4.1
)

require (
	github.com/stretchr/testify v1.11.1 // indirect
	github.com/vmihailenco/tagparser/v2 v2.0.0 // indirect
)
