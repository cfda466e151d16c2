package server

import (
	"fmt"

	"github.com/ledgerd/ledgerd/metrics"
	"github.com/ledgerd/ledgerd/router"
)

// registerMetrics registers the node's groups in the registry (made first
// if the config gave none) and returns the router's metrics, registered
// there too. Close unregisters both.
func (s *Server) registerMetrics() (*router.Metrics, error) {
	if s.metrics == nil {
		reg, err := metrics.New()
		if err != nil {
			return nil, err
		}
		s.metrics = reg
	}
	groups := metrics.NodeCollector(s.node, s.nodeID)
	if err := s.metrics.Registerer().Register(groups); err != nil {
		return nil, fmt.Errorf("metrics: the node's groups: %w", err)
	}
	s.registered = append(s.registered, groups)
	rm, err := router.NewMetrics(s.metrics.Registerer())
	if err != nil {
		return nil, fmt.Errorf("metrics: the router's: %w", err)
	}
	s.registered = append(s.registered, rm.Collectors()...)
	return rm, nil
}

// Metrics returns the process's metrics registry.
func (s *Server) Metrics() *metrics.Registry { return s.metrics }
