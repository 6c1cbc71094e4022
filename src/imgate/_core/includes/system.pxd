# Thin declarations of the libc/POSIX calls the hot path makes; nothing else lives here.

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    struct msghdr:
        void* msg_name
        unsigned int msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    ssize_t sendmsg(int fd, const msghdr* msg, int flags)
    const int MSG_DONTWAIT
    const int MSG_NOSIGNAL

cdef extern from "<errno.h>" nogil:
    int errno
    const int EAGAIN
    const int EWOULDBLOCK
    const int EINTR

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    const int CLOCK_MONOTONIC_COARSE

# A cache hint: start loading memory that the walk will touch a few steps later.
cdef extern from *:
    """
    #define IMGATE_PREFETCH(p) __builtin_prefetch((const void *)(p))
    """
    void IMGATE_PREFETCH(const void* p) noexcept nogil
